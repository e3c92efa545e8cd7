@load ./main
@load ./packets
@load ./notices

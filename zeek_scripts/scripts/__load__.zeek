@load ./main
@load ./notices

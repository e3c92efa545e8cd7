"""Packet features of a capture or batch with no eligible packet are empty,
not an error: the daemon and training meet such input routinely."""

from pathlib import Path

from model.features.packet import PacketFeatureConfig, packet_features
from model.features.pcap import sample_pcap


def test_capture_without_eligible_packets_gives_empty_features(
    data_dir: Path,
) -> None:
    """A DHCP-only capture samples records or none; features never raise."""
    cfg = PacketFeatureConfig()
    for pcap in sorted((data_dir / "chrissanders-packets").glob("arp*.pcapng")):
        table = sample_pcap(pcap)
        x, keep = packet_features(table, cfg)
        assert x.shape[0] == keep.shape[0] == table.num_rows


def test_zero_records_give_a_zero_row_matrix(data_dir: Path) -> None:
    """Zero packet records give a (0, L) float32 matrix."""
    pcap = data_dir / "zeek-btest" / "Traces" / "wikipedia.pcap"
    table = sample_pcap(pcap).slice(0, 0)
    cfg = PacketFeatureConfig()
    x, keep = packet_features(table, cfg)
    assert x.shape == (0, cfg.input_len)
    assert keep.shape == (0,)

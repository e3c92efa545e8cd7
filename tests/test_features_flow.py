"""Flow features from real conn.logs: nulls, odd protocols, schema round-trip."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from model.features.flow import FlowFeatureSchema
from sensor.errors import ConfigError, LogFormatError
from sensor.reader import read_log

CTU_008 = "stratosphere-security-datasets/008-zeek-mixed/data/conn.log.labeled"


def load(path: Path) -> pa.Table:
    return pa.Table.from_batches([b.records for b in read_log(path)])


@pytest.fixture(scope="module")
def ctu(data_dir: Path) -> pa.Table:
    return load(data_dir / CTU_008)


@pytest.fixture(scope="module")
def schema(ctu: pa.Table) -> FlowFeatureSchema:
    return FlowFeatureSchema().fit(ctu)


def column(schema: FlowFeatureSchema, x: np.ndarray, name: str) -> np.ndarray:
    return x[:, schema.columns.index(name)]


def test_real_conn_log_gives_finite_matrix(ctu, schema) -> None:  # type: ignore[no-untyped-def]
    """Every record of a real conn.log becomes one finite row of the schema's width."""
    x = schema.transform(ctu)

    assert x.dtype == np.float32
    assert x.shape == (ctu.num_rows, len(schema.columns))
    assert np.isfinite(x).all()


def test_unset_values_set_indicators_not_zero(ctu, schema) -> None:  # type: ignore[no-untyped-def]
    """Unset durations are flagged and imputed with the training median, not 0."""
    x = schema.transform(ctu)
    unset = pc.is_null(ctu.column("duration")).to_numpy(zero_copy_only=False)
    assert unset.any() and (~unset).any()

    flag = column(schema, x, "missing.duration")
    assert (flag[unset] == 1).all() and (flag[~unset] == 0).all()
    imputed = column(schema, x, "log.duration")[unset]
    median = np.log1p(schema.medians["duration"])
    mean, std = schema.means[0], schema.stds[0]
    assert np.allclose(imputed, (median - mean) / std, atol=1e-5)
    zero_duration = (np.log1p(0.0) - mean) / std
    assert schema.medians["duration"] > 0 and not np.isclose(imputed[0], zero_duration)


def test_absent_fields_are_imputed_and_flagged(cases_dir, schema) -> None:  # type: ignore[no-untyped-def]
    """A site-filtered conn.log (no history, ip bytes, local_*) still transforms."""
    table = load(cases_dir / "07-missing-optional-fields/conn_site_filtered.log")
    x = schema.transform(table)

    assert np.isfinite(x).all()
    for name in ("missed_bytes", "orig_ip_bytes", "resp_ip_bytes"):
        assert (column(schema, x, f"missing.{name}") == 1).all()
    assert (column(schema, x, "missing.orig_pkts") == 0).all()
    assert (column(schema, x, "history.len") == 0).all()


def test_icmp_and_unknown_transport_are_not_ports(cases_dir) -> None:  # type: ignore[no-untyped-def]
    """ICMP type/code and unknown_transport's zero ports never feed port features."""
    table = load(cases_dir / "06-newer-zeek-extra-fields/conn.log")
    schema = FlowFeatureSchema(min_count=1).fit(table)
    x = schema.transform(table)
    proto = table.column("proto").to_pylist()
    icmp = proto.index("icmp")
    gre = proto.index("unknown_transport")
    tcp = proto.index("tcp")

    assert column(schema, x, "icmp_type=135")[icmp] == 1
    assert column(schema, x, "resp_port=<unset>")[icmp] == 1
    assert column(schema, x, "resp_port=<unset>")[gre] == 1
    assert column(schema, x, "proto=unknown_transport")[gre] == 1
    classes = [c for c in schema.columns if "_port_class=" in c]
    for row in (icmp, gre):
        assert all(column(schema, x, c)[row] == 0 for c in classes)
    assert column(schema, x, "icmp_type=<unset>")[tcp] == 1
    assert sum(column(schema, x, c)[tcp] for c in classes) == 2


def test_schema_round_trip_through_json(ctu, schema) -> None:  # type: ignore[no-untyped-def]
    """to_dict/from_dict through JSON gives a schema with identical output."""
    again = FlowFeatureSchema.from_dict(json.loads(json.dumps(schema.to_dict())))

    assert again.columns == schema.columns
    assert np.array_equal(again.transform(ctu), schema.transform(ctu))
    with pytest.raises(ConfigError, match="flow schema"):
        FlowFeatureSchema.from_dict({"kind": "packet"})


def test_direction_fields_only_when_asked(ctu) -> None:  # type: ignore[no-untyped-def]
    """Without use_direction, local_orig/local_resp cannot change the features."""
    plain = FlowFeatureSchema().fit(ctu)
    flipped = ctu.set_column(
        ctu.schema.get_field_index("local_orig"),
        "local_orig",
        pc.invert(ctu.column("local_orig")),
    )
    assert np.array_equal(plain.transform(ctu), plain.transform(flipped))

    directed = FlowFeatureSchema(use_direction=True).fit(ctu)
    assert "local_orig=T" in directed.columns
    assert not np.array_equal(directed.transform(ctu), directed.transform(flipped))


def test_unfitted_schema_and_missing_proto_are_errors(ctu) -> None:  # type: ignore[no-untyped-def]
    """An unfitted schema or records without proto raise a clear error."""
    with pytest.raises(ConfigError, match="not fitted"):
        FlowFeatureSchema().transform(ctu)
    fitted = FlowFeatureSchema().fit(ctu)
    with pytest.raises(LogFormatError, match="proto"):
        fitted.transform(ctu.drop_columns(["proto"]))

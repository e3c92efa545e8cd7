"""What a newcomer meets first on the command line: `bflow info`, the train
summary and help, a closed pipe, a pcap where a Zeek log belongs, TOML error
lines and the eval report's wording."""

import gzip
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from model.artifact import load_model, read_metadata
from model.cli import _bank_size
from model.train import TrainConfig
from sensor.cli import main
from sensor.config import read_toml
from sensor.errors import ConfigError, LogFormatError
from sensor.reader import read_log
from tests.conftest import REPO

torch.set_num_threads(1)

DEFAULT_PACKET = REPO / "sensor/default_models/packet.pt"
DEFAULT_FLOW = REPO / "sensor/default_models/flow.pt"
PCAPNG = "chrissanders-packets/http_espn.pcapng"
TINY = [
    "--epochs-ae",
    "1",
    "--epochs-flow",
    "1",
    "--epochs-clf",
    "1",
    "--set",
    "min_steps=5",
    "--set",
    "restarts=1",
    "--threads",
    "1",
    "--target-fpr",
    "0.05",
]


def _bflow(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()

    return code, out, err


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.M)
    assert match is not None, f"{pattern!r} not in {text!r}"

    return match[1]


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def tiny_knn(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A small flow_knn packet model trained on one capture, and its summary."""
    out = tmp_path_factory.mktemp("knn") / "m.pt"
    args = ["train", "--kind", "packet", "--input", str(data_dir / PCAPNG)]
    done = subprocess.run(
        [sys.executable, "-m", "sensor", *args, "--out", str(out), *TINY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )

    return out, done.stdout


def test_info_summarises_a_model_file(capsys: pytest.CaptureFixture[str]) -> None:
    """`bflow info` prints kind, score, threshold, schema, data and versions."""
    code, out, _ = _bflow(["info", str(DEFAULT_PACKET)], capsys)
    meta = read_metadata(DEFAULT_PACKET)

    assert code == 0
    assert f"kind      {meta.kind}" in out
    assert (
        f"threshold {meta.threshold:.6g} (calibrated for FPR {meta.target_fpr:g}" in out
    )
    assert f"{meta.training['records']['train']} train" in out
    assert meta.model_version in out and meta.created in out
    assert meta.code_version in out and meta.torch_version in out
    assert "input_len=" in out
    assert "slot norm present" in out
    bank = int(_found(r"flow_knn \(nearest of (\d+) normal", out))
    assert 0 < bank <= meta.training["config"]["knn_bank"]
    assert bank <= meta.training["records"]["train"]

    code, out, _ = _bflow(["info", str(DEFAULT_FLOW)], capsys)
    assert code == 0 and "flow_nll" in out and "slot norm none" in out


def test_info_bank_matches_what_train_reported(
    tiny_knn: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The bank size `bflow info` reads from a file is the one training kept."""
    path, summary = tiny_knn
    trained = re.search(r"score +flow_knn \(nearest of (\d+) normal", summary)
    assert trained is not None

    _, out, _ = _bflow(["info", str(path)], capsys)
    assert f"flow_knn (nearest of {trained[1]} normal training samples" in out
    meta = load_model(path).metadata
    assert meta.training["knn_bank_size"] == int(trained[1])
    assert _bank_size(load_model(path)) == int(trained[1])


def test_info_json_is_the_whole_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    """`bflow info --json` prints every metadata key, as the file holds it."""
    code, out, _ = _bflow(["info", "--json", str(DEFAULT_FLOW)], capsys)

    assert code == 0
    assert json.loads(out) == json.loads(read_metadata(DEFAULT_FLOW).to_json())


@pytest.mark.parametrize(
    "name", ["model_truncated.pt", "model_lfs_pointer.pt", "model_empty.pt"]
)
def test_info_refuses_a_model_as_run_does(
    name: str,
    cases_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file `bflow run` refuses gets the same error line from `bflow info`."""
    model = cases_dir / "20-torchscript-model-file" / name
    dirs = []
    for setting in ("log-dir", "notice-dir", "state-dir"):
        (tmp_path / setting).mkdir()
        dirs += [f"--{setting}", str(tmp_path / setting)]
    run_code, _, run_err = _bflow(
        ["run", "--check-config", *dirs, "--packet-model", str(model)], capsys
    )
    info_code, _, info_err = _bflow(["info", str(model)], capsys)

    assert run_code == info_code == 2
    assert _errors(info_err) == _errors(run_err)
    assert len(_errors(info_err)) == 1


def test_info_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    """`bflow --help` and the README's command table both name `bflow info`."""
    _, out, _ = _bflow(["--help"], capsys)

    assert re.search(r"^  info +\S", out, re.M)
    assert "| `bflow info MODEL.pt" in (REPO / "README.md").read_text()


def test_train_summary_names_the_bank_and_the_noise(tiny_knn: tuple[Path, str]) -> None:
    """The train summary gives flow_knn's bank size and what the noise is for."""
    _, summary = tiny_knn

    assert re.search(
        r"^score +flow_knn \(nearest of \d+ normal training samples in flow "
        r"space\)$",
        summary,
        re.M,
    )
    assert re.search(r"^noise .*pseudo-anomalies", summary, re.M)


def test_train_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """`bflow train --help` shows the FPR and epoch defaults and the per-kind score."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = {f.name: f.default for f in fields(TrainConfig)}

    assert "DEFAULT_SCORE" not in text
    assert "packet: flow_knn, flow: flow_nll" in text
    assert re.search(r"--target-fpr \S+ .*\(default 0\.001\)", text)
    for stage in ("ae", "flow", "clf"):
        assert re.search(
            rf"--epochs-{stage} N .*?\(default {defaults[f'epochs_{stage}']},", text
        )


def test_read_into_a_closed_pipe_ends_quietly(data_dir: Path) -> None:
    """`bflow read ... | head -1` exits 141, as SIGPIPE would, and prints nothing."""
    folder = data_dir / "zeek-generated"
    reader = subprocess.Popen(
        [sys.executable, "-m", "sensor", "read", "--format", "jsonl", str(folder)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.readline().startswith(b"{")
    reader.stdout.close()
    err = reader.stderr.read()
    code = reader.wait(timeout=120)

    assert code == 141
    assert b"error" not in err and b"Traceback" not in err


def test_a_pcap_is_named_as_one(data_dir: Path, tmp_path: Path) -> None:
    """A pcap, pcapng or gzip of one read as a Zeek log says what it is."""
    pcap = next((data_dir / "slips/dataset").rglob("*.pcap"))
    pcapng = data_dir / PCAPNG
    zipped = tmp_path / "capture.gz"
    zipped.write_bytes(gzip.compress(pcapng.read_bytes()))

    for path, kind in ((pcap, "pcap"), (pcapng, "pcapng"), (zipped, "pcapng")):
        with pytest.raises(LogFormatError) as caught:
            list(read_log(path))
        message = str(caught.value)
        assert message.startswith(
            f"{path} is a packet capture ({kind}), not a Zeek log: run Zeek"
        )
        assert "--kind packet" in message


def test_flow_commands_name_a_pcap(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train --kind flow` and a flow model's `eval` on a pcap say it is one."""
    pcapng = str(data_dir / PCAPNG)
    train = [
        "train",
        "--kind",
        "flow",
        "--input",
        pcapng,
        "--out",
        str(tmp_path / "f.pt"),
    ]
    evaluate = ["eval", "--model", str(DEFAULT_FLOW), "--input", pcapng]
    for argv in (
        train,
        evaluate + ["--labels", str(data_dir / "labels/connections.tsv")],
    ):
        code, _, err = _bflow(argv, capsys)

        assert code == 2
        assert _errors(err) == [
            f"error: {pcapng} is a packet capture (pcapng), not a Zeek log: run "
            "Zeek on it first, or use --kind packet to train on its packets"
        ]


def _toml_message(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bflow.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_toml(path)

    return str(caught.value)


def test_toml_open_array_quotes_the_line_that_opened_it(tmp_path: Path) -> None:
    """A value left open on line 29 is quoted beside line 30; no quote hint."""
    head = "".join(f"# note {i}\n" for i in range(1, 28)) + 'log_dir = "/x"\n'
    message = _toml_message(tmp_path, head + "foo = [\nsummary_interval = 60\n")

    assert "at line 30, column 1" in message
    assert (
        "the line reads 'summary_interval = 60', or the line before it, 'foo = ['"
        in message
    )
    assert "double quotes" not in message

    message = _toml_message(tmp_path, "x = [1, 2\n\n\ny = 3\n")
    assert "Unclosed array" in message
    assert "or the line before it, 'x = [1, 2'" in message

    message = _toml_message(tmp_path, 'a = 1\nx = """abc\n\ny = 2\n')
    assert "Unterminated string" in message
    assert 'or the line before it, \'x = """abc\'' in message

    # Opened and left open on the line tomllib names: that line alone.
    message = _toml_message(tmp_path, 'a = 1\nb = "abc\n')
    assert "the line reads 'b = \"abc'; fix that line" in message


def test_toml_quote_hint_only_for_a_bare_word(tmp_path: Path) -> None:
    """The double-quote hint comes with a bare word, not with other mistakes."""
    bare = _toml_message(tmp_path, "log_dir = /var/log/zeek\n")
    duplicate = _toml_message(tmp_path, "x = 1\nx = 2\n")
    two_values = _toml_message(tmp_path, "x = 1 2\n")

    assert (
        "the line reads 'log_dir = /var/log/zeek'; fix that line (text values "
        "need double quotes" in bare
    )
    assert "or the line before it" not in bare
    assert "double quotes" not in duplicate and "double quotes" not in two_values


def test_eval_counts_connections_and_warns_on_a_high_fpr(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Families say what `n` counts; an FPR over 2x the target gets a warning."""
    ctu = data_dir / "stratosphere-security-datasets/008-zeek-mixed/data"
    argv = ["eval", "--threads", "1", "--model", str(DEFAULT_FLOW)]
    argv += ["--report", str(tmp_path / "e.png")]
    code, out, _ = _bflow(
        [*argv, "--input", str(ctu / "conn.log.labeled"), "--label-field", "label"],
        capsys,
    )
    fpr = float(_found(r"fpr_at_threshold=(\S+)$", out))
    target = read_metadata(DEFAULT_FLOW).target_fpr

    assert code == 0 and fpr > 2 * target
    assert re.search(r"^family +Malicious +\d+ connections +AUROC", out, re.M)
    warned = _found(
        r"^warning: the false-positive rate at the threshold is (\S+) ", out
    )
    assert float(warned) == pytest.approx(fpr, abs=1e-4)
    assert "retrain it on this network's normal traffic" in out

    lab = data_dir / "lab"
    code, out, _ = _bflow(
        [
            *argv,
            "--input",
            str(lab / "mixed-1/zeek/conn.log"),
            "--labels",
            str(lab / "labels/connections.tsv"),
        ],
        capsys,
    )
    fpr = float(_found(r"fpr_at_threshold=(\S+)$", out))
    assert code == 0 and fpr <= 2 * target
    assert "warning" not in out


def test_eval_packet_families_count_packets_and_connections(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A packet model's family line counts packets and the connections they are in."""
    captures = [
        data_dir / "chrissanders-packets/http_dvwa_sqlinjection_passwords.pcapng",
        data_dir / PCAPNG,
    ]
    code, out, _ = _bflow(
        [
            "eval",
            "--threads",
            "1",
            "--model",
            str(DEFAULT_PACKET),
            "--input",
            *map(str, captures),
            "--labels",
            str(data_dir / "labels/connections.tsv"),
            "--report",
            str(tmp_path / "p.png"),
        ],
        capsys,
    )

    assert code == 0
    assert re.search(
        r"^family +sqli +\d+ packets? in \d+ connections? +AUROC", out, re.M
    )


def test_eval_title_counts_inputs() -> None:
    """The eval report's title says "1 input" and "N inputs"."""
    from model.cli import eval_title

    assert eval_title(Path("m.pt"), 1) == "bflow eval: m.pt on 1 input"
    assert eval_title(Path("m.pt"), 3) == "bflow eval: m.pt on 3 inputs"


def test_any_command_into_a_closed_pipe_ends_quietly() -> None:
    """Every command, not only `read`, ends with 141 and no error line when
    its stdout reader has gone (here `bflow info --json | head -0`)."""
    info = subprocess.Popen(
        [sys.executable, "-m", "sensor", "info", "--json", str(DEFAULT_PACKET)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert info.stdout is not None and info.stderr is not None
    info.stdout.close()
    err = info.stderr.read()
    code = info.wait(timeout=120)

    assert code == 141
    assert b"error" not in err and b"Traceback" not in err

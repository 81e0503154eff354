"""The benchmark scripts' shared helpers: the paths and command lines they record are relative to the repository."""

import pytest

from hfcompress.utils.bench import CPU_LOCK, REPO, add_data_args, bench_parser, command_line, repo_relative


def test_repo_relative(tmp_path):
    root = tmp_path / "main"
    root.mkdir()
    assert repo_relative(root / "outputs" / "student", root) == "outputs/student"
    assert repo_relative(str(root / "outputs" / ".." / "recipes" / "a.yaml"), root) == "recipes/a.yaml"
    assert repo_relative(root, root) == "."
    assert repo_relative(tmp_path / "shared" / "assets" / "data", root) == "../shared/assets/data"  # beside the checkout
    for kept in ("../shared/assets/data", "outputs/student", "bert-base-uncased", "org/model", ""):
        assert repo_relative(kept, root) == kept  # relative paths and Hub ids are recorded as given
    assert repo_relative("/elsewhere/work", root) == "/elsewhere/work"
    (tmp_path / "link").symlink_to(root)
    assert repo_relative(root / "outputs", tmp_path / "link") == "outputs"  # the root given through a link
    assert repo_relative(REPO / "recipes" / "sst2_minilm.yaml") == "recipes/sst2_minilm.yaml"


def test_command_line_is_rerunnable_from_the_repository():
    argv = ["--teacher", str(REPO / "outputs" / "teacher"), "--student", "", "--label", "a b", f"--output={REPO}/out", "x=1"]
    expected = "python scripts/bench_x.py --teacher outputs/teacher --student '' --label 'a b' --output=out x=1"
    assert command_line(REPO / "scripts" / "bench_x.py", argv) == expected
    assert command_line(REPO / "scripts" / "bench_x.py", [], prefix=CPU_LOCK) == f"{CPU_LOCK} python scripts/bench_x.py"


def test_bench_parser_and_data_args(capsys):
    parser = bench_parser("First paragraph.\n\nUsage and details.")
    add_data_args(parser, default=None)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --data is required without a default
    assert "--data" in capsys.readouterr().err
    parser = bench_parser("Doc.")
    add_data_args(parser)
    assert vars(parser.parse_args([])) == {"data": "../shared/assets/data/sst2", "data_config": None}
    assert parser.description == "Doc."

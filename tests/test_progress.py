"""Progress output: a few plain lines when not on a terminal, nothing for quick work or when turned off."""

import io

from cincer.cli import main
from cincer.progress import Progress


def test_a_log_gets_at_most_one_line_per_tenth_and_no_carriage_returns():
    out = io.StringIO()
    with Progress(1000, "features", unit="rows", delay=0, stream=out) as progress:
        for _ in range(1000):
            progress.update(1)
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[1].split("%")[0] for line in lines] == [str(10 * k) for k in range(1, 11)]
    assert "\r" not in out.getvalue()


def test_quick_work_and_disabled_progress_print_nothing(monkeypatch):
    out = io.StringIO()
    with Progress(10, "quick", stream=out) as progress:  # over long before the 2 s delay
        progress.update(10)
    monkeypatch.setenv("CINCER_PROGRESS", "0")
    with Progress(10, "off", delay=0, stream=out) as progress:
        progress.update(10)
    assert out.getvalue() == ""


def test_cincer_run_writes_a_short_log(tmp_path, capsys):
    assert main(["run", "--dataset", "iris", "--known", "20", "--rounds", "30", "--repeats", "2", "--epochs", "2",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert 1 <= len(err.splitlines()) <= 10 and "\r" not in err and "iris/fullnet/top_fisher: 100%" in err

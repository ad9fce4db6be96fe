"""The check the tests share for a refused input: stderr is one line, `copl: error: ...`, with no
traceback, and holds each expected fragment."""

from __future__ import annotations


def one_line_error(capsys, *fragments: str, prefix: str = "copl: error: ") -> str:
    """`prefix`: "copl" also admits argparse's "copl SUBCOMMAND: error: ..."."""
    err = capsys.readouterr().err.strip()
    assert err.startswith(prefix) and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err

"""The CLI's stderr notices (logger ``batchroute.notice``): shown once, nothing else shown."""

from __future__ import annotations

import logging

import pytest

from batchroute import cli


def test_the_cli_prints_notices_only(capsys: pytest.CaptureFixture[str]) -> None:
    notice = logging.getLogger("batchroute.notice")
    saved = (list(notice.handlers), notice.level, notice.propagate)
    root = logging.getLogger()
    root_handler = logging.StreamHandler()  # an app that configured logging: it must not see notices twice
    root.addHandler(root_handler)
    try:
        cli.show_notices()
        cli.show_notices()
        notice.info("a notice for the user")
        logging.getLogger("batchroute.analyzer.index").info("an internal detail")
        assert capsys.readouterr().err == "a notice for the user\n"
    finally:
        root.removeHandler(root_handler)
        notice.handlers[:], notice.level, notice.propagate = saved[0], saved[1], saved[2]

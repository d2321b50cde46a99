"""Every log record carries the request id of the request that produced it (text and JSON formats)."""

from __future__ import annotations

import json
import logging

from service.logging import JsonFormatter, configure_logging, install_record_factory, request_id_var


def test_records_carry_the_context_request_id() -> None:
    install_record_factory()
    token = request_id_var.set("rid-42")
    try:
        record = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    finally:
        request_id_var.reset(token)
    assert record.request_id == "rid-42"
    data = json.loads(JsonFormatter().format(record))
    assert data["request_id"] == "rid-42" and data["message"] == "hello you" and data["level"] == "INFO"


def test_configure_logging_is_idempotent(capsys) -> None:
    configure_logging("INFO", json_lines=True)
    configure_logging("INFO", json_lines=True)
    token = request_id_var.set("rid-7")
    try:
        logging.getLogger("service.test").info("one line")
    finally:
        request_id_var.reset(token)
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == "samclip"]:
            root.removeHandler(handler)
    lines = [line for line in capsys.readouterr().err.splitlines() if "one line" in line]
    assert len(lines) == 1 and json.loads(lines[0])["request_id"] == "rid-7"

"""Filters TensorFlow's native start-up and converter chatter out of standard error.

TensorFlow, the TFLite converter and LiteRT log through native code straight to file
descriptor 2, ignoring Python's logging and (for these lines) ``TF_CPP_MIN_LOG_LEVEL``.
``filtered_stderr()`` routes fd 2 through a pipe and drops only known informational lines,
passing everything else (errors included) through as it arrives.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

__all__ = ["filtered_stderr", "captured_stderr", "CHATTER"]

CHATTER = re.compile(
    r"^(?:[IW]\d{4} \d\d:\d\d:\d\d\.\d+ |[IW]0000 )"                  # absl info/warning lines
    r"|^WARNING: All log messages before absl::InitializeLog"
    r"|^INFO: Created TensorFlow Lite XNNPACK delegate"
    r"|^To enable the following instructions: .*rebuild TensorFlow"
)


@contextlib.contextmanager
def filtered_stderr(enabled: bool = True):
    """Within the block, native and Python writes to stderr pass through the chatter filter."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump():
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                line = raw.decode(errors="replace")
                if not CHATTER.search(line):
                    os.write(saved, raw)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last writer, so the pump sees end of file
        thread.join(timeout=5)
        os.close(saved)


class Captured:
    """What a ``captured_stderr`` block wrote (``text``, set when the block ends)."""

    text = ""


@contextlib.contextmanager
def captured_stderr():
    """Within the block, native and Python writes to stderr go to a buffer, not the terminal:
    a converter's own report of a failure that blockprune states in one line (the report is
    attached to the exception as a note, which ``BLOCKPRUNE_DEBUG=1`` shows)."""
    import tempfile

    captured = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield captured
        except Exception as e:
            sys.stderr.flush()
            buffer.seek(0)
            captured.text = buffer.read().decode(errors="replace")
            if captured.text.strip():
                e.add_note(captured.text)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)

"""structlog set-up shared by every command.

On a terminal events are rendered for people; elsewhere (systemd's journal, a
pipe) each event is one JSON object per line.
"""

import logging
import sys

import structlog


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(*, verbose: bool = False, json: bool | None = None) -> None:
    """Route structlog events to stderr.

    Args:
        verbose: also show debug events.
        json: force JSON (True) or console (False) rendering; None picks JSON
            unless stderr is a terminal.
    """
    if json is None:
        json = not sys.stderr.isatty()
    level = logging.DEBUG if verbose else logging.INFO
    renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Looked up at each event, not once: tests and daemons may swap
        # sys.stderr after logging is configured.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )

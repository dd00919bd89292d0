"""Structured logs: one JSON object per line, ``job_id`` on every line written for a job.

Log collectors (Loki, Elastic, CloudWatch) index JSON fields without parsing rules, and one line
per event keeps a traceback from being split into many records. The job in hand is carried in a
context variable, so every line a job causes (ours, the engine's, a library's) names it without
passing it around. Secrets and picture bytes never reach the output: known secret values, URL
signatures and base64 data URLs are masked, and over-long messages are cut.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("retouch_job_id", default=None)

# A message longer than this is cut: nothing a person reads is this long, but a dumped request
# body or an encoded picture would be.
MAX_MESSAGE_CHARS = 4000
REDACTED = "[redacted]"

_DATA_URL = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=_-]*")
_LONG_BASE64 = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")
_URL_SECRETS = re.compile(r"(?i)\b(sig|signature|api_key|apikey|key|token)=[^&\s\"']+")
_HEADER_SECRETS = re.compile(
    r"(?i)\b(x-api-key|authorization)(['\"]?\s*[:=]\s*['\"]?)(bearer\s+)?[^\s\"',}]+"
)

_JOB_ID = re.compile(r"\bjob_[0-9a-f]{24}\b")  # server.core.new_id("job")

# Attributes every LogRecord has; anything else was passed with ``extra=`` and becomes a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Every log line written inside this block carries ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


def current_job_id() -> str | None:
    return _job_id.get()


def _mentioned_job(text: str) -> str | None:
    """The job a line names (an access-log line for its status or result URL, say)."""
    found = _JOB_ID.search(text)
    return found.group(0) if found else None


class Redactor:
    """Masks secret values and picture bytes in text."""

    def __init__(self, secrets: Iterable[str] = ()):
        # Short values would mask ordinary words; real keys and secrets are long.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _DATA_URL.sub("data:[image bytes omitted]", text)
        text = _LONG_BASE64.sub("[base64 omitted]", text)
        text = _URL_SECRETS.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
        text = _HEADER_SECRETS.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        if len(text) > MAX_MESSAGE_CHARS:
            text = text[:MAX_MESSAGE_CHARS] + f"... [{len(text) - MAX_MESSAGE_CHARS} chars cut]"
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor, process_name: str):
        super().__init__()
        self.redact = redact
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process_name,
            "msg": self.redact(record.getMessage()),
        }
        job_id = getattr(record, "job_id", None) or current_job_id() or _mentioned_job(entry["msg"])
        if job_id:
            entry["job_id"] = job_id
        for key, value in vars(record).items():
            if key in _STANDARD or key in entry or key == "job_id":
                continue
            entry[key] = self._field(value)
        if record.exc_info:
            entry["exc"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)

    def _field(self, value):
        if isinstance(value, bool | int | float | type(None)):
            return value
        if isinstance(value, dict):
            return {str(k): self._field(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._field(v) for v in value]
        return self.redact(str(value))


class TextFormatter(logging.Formatter):
    """For a person at a terminal (``RETOUCH_LOG_FORMAT=text``); same redaction."""

    def __init__(self, redact: Redactor, process_name: str):
        super().__init__("%(asctime)s " + process_name + " %(levelname)s %(name)s %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job_id = getattr(record, "job_id", None) or current_job_id() or _mentioned_job(line)
        return self.redact(f"{line} job_id={job_id}" if job_id else line)


def secret_values(settings) -> list[str]:
    """Every secret the settings hold, so no log line can print one."""
    values = [settings.signing_secret or "", settings.webhook_secret or ""]
    # RETOUCH_API_KEYS entries are "key" or "key:scope+scope"; only the key part is secret.
    values += [item.strip().partition(":")[0] for item in (settings.api_keys or "").split(",")]
    values += list(getattr(settings, "key_budgets_usd", {}) or {})
    redis_url = getattr(settings, "redis_url", None)
    if redis_url:
        values.append(urlsplit(redis_url).password or "")
    return values


def configure_logging(settings, process_name: str = "api") -> None:
    """Route every logger (ours, uvicorn's, libraries') through one redacting formatter on stderr."""
    redact = Redactor(secret_values(settings))
    formatter_class = TextFormatter if settings.log_format == "text" else JsonFormatter
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_class(redact, process_name))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # uvicorn installs its own handlers unless told not to; send its lines through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Library warnings become log lines too; progress bars (tqdm, used by the model loaders) would
    # write partial lines between the JSON ones, so JSON logs switch them off.
    logging.captureWarnings(True)
    if settings.log_format == "json":
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Libraries that narrate every request at INFO would drown the job lines.
    for noisy in ("httpx", "httpcore", "multipart", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

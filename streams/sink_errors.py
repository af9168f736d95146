"""How the sink classifies ClickHouse's errors: retriable (nothing is wrong with the data: back off, never
commit) or a refusal of the data (dead-letter it with ClickHouse's message and go on)."""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

# ClickHouse error codes that say nothing about the data: the server is busy or going away, or our own
# tables/SQL are not (yet) what we expect. Retried with back-off, never dead-lettered. Not 36 (BAD_ARGUMENTS):
# ClickHouse also answers it for data (a protobuf oneof set twice), which must be dead-lettered, not retried.
RETRIABLE_CODES = frozenset(
    {
        3,
        16,
        74,  # CANNOT_READ_FROM_FILE_DESCRIPTOR  } the disk, not the data: a full or failing disk used to be
        75,  # CANNOT_WRITE_TO_FILE_DESCRIPTOR   } bisected down to single entries and every one dead-lettered
        243,  # NOT_ENOUGH_SPACE                 }
        46,
        47,
        60,
        62,
        81,
        115,
        159,
        160,
        164,
        202,
        203,
        209,
        210,
        236,
        241,
        242,
        252,
        285,
        319,
        394,
        425,
        439,
        497,
        516,
        999,
    }
)


class RetriableError(Exception):
    """The batch could not be written for reasons outside the data; try again later."""


class RefusedError(Exception):
    """ClickHouse refuses the data (ClickHouse's message in args[0])."""


def classify(exc: Exception) -> Exception:
    """RetriableError or RefusedError for a client exception."""
    if isinstance(exc, DatabaseError) and not isinstance(exc, OperationalError):
        code = getattr(exc, "code", None)
        if code is not None and code not in RETRIABLE_CODES:
            return RefusedError(_one_line(str(exc)))
    return RetriableError(_one_line(str(exc)) or type(exc).__name__)


def _one_line(message: str) -> str:
    text = " ".join(message.split())
    return text[:2000]

"""User-facing errors. The CLI prints each as one line and exits with code 2."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name), for one-line user errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class DDMBenchError(Exception):
    """Base class: the message names the input, the value and how to fix it."""


class ConfigError(DDMBenchError):
    """params.yaml (or a CLI override) is invalid."""


class DataError(DDMBenchError):
    """A dataset file is missing, truncated or fails its checksum."""


class ArtifactError(DDMBenchError):
    """An upstream output (checkpoint, samples, metrics) is missing or unreadable."""


class TrainingError(DDMBenchError):
    """Training diverged or could not run."""


class NoClusters(ArtifactError):
    """The imported DDM brings no cluster manifest: the analyses that need one are skipped, with this reason."""

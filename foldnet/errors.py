"""Errors raised on bad user input."""


class DataError(Exception):
    """Bad input data. Carries every problem found, not only the first.

    ``problems`` is a list of human-readable strings, each naming the offending
    file, row or id.
    """

    def __init__(self, summary, problems=()):
        self.summary = summary
        self.problems = list(problems)
        super().__init__(self._format())

    def _format(self, limit=50):
        lines = [self.summary]
        for p in self.problems[:limit]:
            lines.append(f"  - {p}")
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


class ConfigError(Exception):
    """Bad flag or config value."""

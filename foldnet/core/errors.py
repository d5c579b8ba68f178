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

    def _format(self, limit=None):
        """The summary and one line per problem (all of them unless ``limit``)."""
        shown = self.problems if limit is None else self.problems[:limit]
        lines = [self.summary] + [f"  - {p}" for p in shown]
        if len(shown) < len(self.problems):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        return "\n".join(lines)

    def format(self, limit=None):
        return self._format(limit)


class ConfigError(Exception):
    """Bad flag or config value."""


class WeightsError(DataError, ValueError):
    """A weights / checkpoint file that does not fit the model (another architecture, head or size)."""

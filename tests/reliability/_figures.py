"""Session-wide counters of the reliability suite (printed by conftest at the end of the run)."""
FIGURES: dict = {}


def count(name: str, n: int = 1) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + int(n)

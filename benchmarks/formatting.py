"""How the benchmark reports write numbers, tables and verdicts: one place for all of them."""


def micros(ns):
    value = ns / 1000.0
    if value >= 100:
        return "%.0f" % value
    if value >= 10:
        return "%.1f" % value
    return "%.2f" % value


def times(value):
    return "%.1f×" % value if value < 100 else "%.0f×" % value


def ns(value):
    return "%.0f" % value if value >= 10 else "%.1f" % value


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(item) for item in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met, shortfall):
    return "met" if met else "**missed**: " + shortfall

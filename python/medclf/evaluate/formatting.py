"""Text of numbers in reports and tables, in one place: metric estimates with their 95% intervals
(report_<split>.md, compare.md, the study summary, the report command's one-line summary) and p-values."""

from medclf.evaluate.metrics import zero_width


def number(x, digits=3):
    """0.812 with `digits` decimals; 'NA' for a missing value."""
    return "NA" if x is None else f"{x:.{digits}f}"


def _bounds(metric):
    """('0.700 to 0.900', zero width?) or (None, False) without bounds."""
    if not isinstance(metric, dict) or metric.get("lower") is None or metric.get("upper") is None:
        return None, False
    return f"{number(metric['lower'])} to {number(metric['upper'])}", zero_width(metric["lower"], metric["upper"])


def interval(metric):
    """'0.700 to 0.900'; 'n/a' without bounds; a zero-width interval is marked '0.500 to 0.500 (zero width)'."""
    text, zero = _bounds(metric)
    if text is None:
        return "n/a"
    return f"{text} (zero width)" if zero else text


def estimate_with_interval(metric):
    """'0.812 (0.700 to 0.900)' or '0.500 (0.500 to 0.500, zero width)'; a bare number as is; 'NA' without an
    estimate; '-' if absent."""
    if metric is None:
        return "-"
    if isinstance(metric, (int, float)) and not isinstance(metric, bool):
        return number(metric)
    if not isinstance(metric, dict) or metric.get("estimate") is None:
        return "NA"
    text, zero = _bounds(metric)
    if text is None:
        return number(metric["estimate"])
    return f"{number(metric['estimate'])} ({text}{', zero width' if zero else ''})"


def p_value(x):
    """'0.0312', or '3.10e-05' below 0.001; 'NA' if missing."""
    return "NA" if x is None else (f"{x:.2e}" if x < 1e-3 else f"{x:.4f}")

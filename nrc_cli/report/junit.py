"""A check report -> JUnit XML, the test-report format GitHub Actions, GitLab and Jenkins read.

One ``<testsuite name="nrc check">`` inside ``<testsuites>``; one ``<testcase>`` per requirement
and per baseline check. A failed case carries a ``<failure>`` whose ``message`` is the one-line
verdict and whose text lists the observed values. Computes nothing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from nrc_cli._version import __version__
from nrc_cli.gates import CheckReport

SUITE_NAME = "nrc check"


def junit_xml(
    report: CheckReport,
    *,
    duration: float = 0.0,
    timestamp: str | None = None,
    hostname: str | None = None,
) -> str:
    """Render a check as a JUnit XML document.

    Parameters
    ----------
    report : CheckReport
    duration : float
        Seconds the check took (the analysis included), for the suite's ``time``.
    timestamp : str, optional
        ISO 8601 start time (``2025-01-31T12:00:00``) for the suite; omitted when None.
    hostname : str, optional
        The machine, for the suite; omitted when None.

    Returns
    -------
    str
        UTF-8 XML text with a declaration and a trailing newline.
    """
    cases = report.cases()
    failures = sum(not c.passed for c in cases)
    time = f"{max(duration, 0.0):.3f}"
    counts = {
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": "0",
        "skipped": "0",
        "time": time,
    }
    root = ET.Element("testsuites", {"name": "nrc", **counts})
    suite_attrs = {"name": SUITE_NAME, **counts}
    if timestamp is not None:
        suite_attrs["timestamp"] = timestamp
    if hostname is not None:
        suite_attrs["hostname"] = hostname
    suite = ET.SubElement(root, "testsuite", suite_attrs)
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("nrc_version", __version__),
        ("checkpoint", report.checkpoint),
        ("data", report.data),
        ("baseline", report.baseline.path if report.baseline is not None else ""),
    ):
        ET.SubElement(props, "property", {"name": name, "value": _xml_safe(value)})
    for case in cases:
        element = ET.SubElement(
            suite,
            "testcase",
            {"classname": case.classname, "name": _xml_safe(case.name), "time": "0"},
        )
        if not case.passed:
            failure = ET.SubElement(
                element,
                "failure",
                {"message": _xml_safe(case.message), "type": case.failure_type},
            )
            failure.text = _xml_safe(f"{case.message}\n{case.details}".rstrip() + "\n")
    out = ET.SubElement(suite, "system-out")
    out.text = report.counts_line + "\n"
    ET.SubElement(suite, "system-err")
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


def _xml_safe(text: str) -> str:
    """Drop the control characters XML 1.0 cannot hold (ElementTree would write them as-is)."""
    return "".join(ch for ch in str(text) if ch in "\t\n\r" or ord(ch) >= 0x20)

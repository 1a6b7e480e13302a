"""Reports: the cohort audit (who is in the data, who is missing) and the fairness pipeline's report page."""

from fairmonai.report.audit import audit_cohort, write_audit
from fairmonai.report.pipeline import load_report, render_report

__all__ = ["audit_cohort", "load_report", "render_report", "write_audit"]

"""Reports: the cohort audit (who is in the data, who is missing) as JSON, CSV, PNG and HTML."""

from fairmonai.report.audit import audit_cohort, write_audit

__all__ = ["audit_cohort", "write_audit"]

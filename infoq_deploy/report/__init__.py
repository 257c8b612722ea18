"""Stage 9, report: everything above in, report.md / report.json and plots out."""

"""The report: the tutorials' figures, the report page, and DVC's offline plots page."""

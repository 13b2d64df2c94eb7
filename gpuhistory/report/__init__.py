"""Incident reports: one self-contained HTML file per incident, to attach to a ticket.

``report_data`` reads what the report shows from the database (document.py);
``render_report`` writes the file (render.py), inlining the chart library and the
dashboard's own chart code (assets.py). See docs/incidents.md, "Reports".
"""

from gpuhistory.report.assets import AssetMissing
from gpuhistory.report.document import report_data
from gpuhistory.report.render import Report, render_report

__all__ = ["AssetMissing", "Report", "render_report", "report_data"]

"""What a study shows: its analysis computed once (analysis, from comparisons, findings,
axis_findings, remedies and notebook), rendered into report.md (render, wording) and figures
(figures), written all or nothing (publish); `bnstudy plan` (plan) and the README's answer
(answer).

Torch-free.
"""

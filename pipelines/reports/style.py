"""Figure sizes and matplotlib settings for figures that print legibly in a paper.

A figure is drawn at its printed size: one column (3.5 in) for a single panel, the full text
width (7.16 in, two columns) for several, with 7–9 pt fonts, so that it needs no scaling.
Fonts are embedded as TrueType in PDF (no Type 3 fonts, which some venues reject) and SVG ids
are deterministic. Imports nothing: the partition stage uses it without the report modules.
"""

COLUMN_INCHES = 3.5
TEXT_WIDTH_INCHES = 7.16
#: rcParams every report and partition figure is drawn and saved under (``matplotlib.rc_context``)
PAPER_STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.4,
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "pdf.fonttype": 42,
    "svg.hashsalt": "cmi",
}
#: PNG resolution: 200 dpi at the printed size
DPI = 200
#: file formats a figure is written in
FIGURE_FORMATS = ("png", "svg", "pdf")
#: save metadata that would make the same figure's bytes differ between runs (dates, versions)
SAVE_METADATA = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}

"""LaTeX output: every table of a report as a booktabs ``table`` that pastes into a paper.

Each table is ``\\begin{table}…\\end{table}`` with ``\\toprule``/``\\midrule``/``\\bottomrule``
(``\\usepackage{booktabs}`` in the preamble, nothing else), its title and note as the caption
and a ``\\label{tab:cmi-…}``. Numbers are in math mode: ``$78.3 \\pm 2.1$`` for a mean ± std,
``$+1.2$`` for a signed difference; the cells a table marks best (:attr:`Cell.bold`) are
``\\mathbf``. Text is escaped (``\\ & % $ # _ { } ~ ^ < >``) and the Unicode signs the tables use
(−, ±, Δ, ·, ×, √, —, …, ρ̄) become LaTeX commands, so the output compiles with pdflatex as well.
"""

from __future__ import annotations

import re

from pipelines.reports.tables import MISSING, Cell, Document, Table

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
    "−": "$-$", "±": r"$\pm$", "Δ": r"$\Delta$", "·": r"$\cdot$", "×": r"$\times$", "√": r"$\surd$",
    "—": "---", "–": "--", "…": r"\dots{}", "≥": r"$\geq$", "≤": r"$\leq$", "α": r"$\alpha$",
    "κ": r"$\kappa$", "ρ̄": r"$\bar{\rho}$", "ρ": r"$\rho$",
}
# longest first: ρ̄ (ρ and a combining macron) before ρ
_SPECIAL_RE = re.compile("|".join(re.escape(c) for c in sorted(_SPECIAL, key=len, reverse=True)))


def escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped and the tables' Unicode signs as commands."""
    return _SPECIAL_RE.sub(lambda m: _SPECIAL[m.group(0)], text)


def _math(text: str) -> str:
    """A printed number in math mode (``−`` as ``-``, ``<`` kept)."""
    return text.replace("−", "-")


def latex_cell(cell: Cell) -> str:
    """One cell: numbers (and mean ± std, intervals) in math mode, bold via ``\\mathbf``; text
    escaped (bold via ``\\textbf``)."""
    main, spread = cell.pieces
    if cell.kind == "text" or main in (MISSING, "n/a"):
        text = escape(main)
        return rf"\textbf{{{text}}}" if cell.bold else text
    body = _math(main) if spread is None else rf"{_math(main)} \pm {_math(spread)}"
    return rf"$\mathbf{{{body}}}$" if cell.bold else f"${body}$"


def _label(key: str) -> str:
    return "tab:cmi-" + re.sub(r"[^A-Za-z0-9-]+", "-", key).strip("-")


def latex_table(table: Table) -> str:
    """A ``table`` float holding the booktabs ``tabular`` of ``table`` (a rule after each group
    of rows), captioned with its title and note."""
    numeric = [bool(table.rows) and any(row[i].kind != "text" for row in table.rows) for i in range(len(table.columns))]
    spec = "".join("r" if n else "l" for n in numeric)
    caption = escape(table.title) + (f". {escape(table.note)}" if table.note else "")
    lines = [
        r"\begin{table}[tbp]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{{_label(table.key)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(escape(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    last = len(table.rows) - 1
    for i, row in enumerate(table.rows):
        lines.append(" & ".join(latex_cell(c) for c in row) + r" \\")
        if i in table.separators and i != last:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def to_latex(document: Document) -> str:
    """Every table of ``document`` as a booktabs float, after comment lines with the title, the
    legend, the notes and the one package needed."""
    head = [f"% {document.title}", f"% {document.legend}", *(f"% note: {n}" for n in document.notes),
            r"% Needs \usepackage{booktabs} in the preamble."]
    head = [line.replace("\n", " ") for line in head]
    return "\n".join(head) + "\n\n" + "\n\n".join(latex_table(t) for t in document.tables) + "\n"

from pipelines.partitioning.heatmap import wrap_title


def test_a_long_title_is_wrapped_between_words_to_the_figure_width():
    name = "manifest-dir0.5-c20-m0.3-s0"
    description = "Dirichlet α=0.5 label skew, 20 clients, 30% of training samples miss one or more modalities"
    lines = wrap_title(f"{name}\n{description}", 4.0).split("\n")
    assert lines[0] == name and len(lines) == 3
    assert " ".join(lines[1:]) == description
    assert all(len(line) <= 4.0 * 72 / 5.6 for line in lines)
    assert wrap_title(f"{name}\n{description}", 20.0) == f"{name}\n{description}"  # room enough: unchanged

"""A sweep document rendered: terminal table with curves and cliffs, and the HTML report."""

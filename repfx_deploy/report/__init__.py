"""Report: what was lost and what was gained, as JSON for tools and Markdown for people."""

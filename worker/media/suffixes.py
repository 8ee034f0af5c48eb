"""Which file names count as media when a directory is walked (`dfmod scan`, `dfmod-train prepare`).

Only walks use it: the decoder sniffs the bytes and never trusts a name, and a file named explicitly is
always read, whatever its suffix.
"""

MEDIA_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".flv", ".3gp",
})

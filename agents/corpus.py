"""The playbook corpus: which files we take, their text, and how it is cut into passages.

    kind = detect_content_type(filename, declared_content_type)   # or IngestionError
    text = extract_text(data, kind, filename)                      # or IngestionError
    chunks = chunk_text(text)                                      # ~800 chars, ~100 overlap

Every `IngestionError` message is written for the consultant who uploaded the file: it says
what is wrong and what to do, and never contains a stack trace.
"""

from __future__ import annotations

import io
import logging
import re
from html.parser import HTMLParser
from pathlib import PurePath

logger = logging.getLogger(__name__)

TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"

# Canonical content type -> file extensions that may carry it.
SUPPORTED: dict[str, tuple[str, ...]] = {
    TEXT: (".txt", ".text"),
    MARKDOWN: (".md", ".markdown"),
    HTML: (".html", ".htm"),
    PDF: (".pdf",),
}
_ALIASES = {
    "text/x-markdown": MARKDOWN,
    "text/md": MARKDOWN,
    "application/xhtml+xml": HTML,
    "application/x-pdf": PDF,
}
# What browsers and HTTP clients send when they do not know: the extension decides.
_GENERIC = {"", "application/octet-stream", "binary/octet-stream", "application/unknown"}
SUPPORTED_DESCRIPTION = "plain text (.txt), Markdown (.md), HTML (.html) or PDF (.pdf)"

CHUNK_SIZE = 800
CHUNK_OVERLAP = 100


class IngestionError(Exception):
    """The document cannot be taken in; the message is for the person who uploaded it."""


# --------------------------------------------------------------------------- types


def _extension_type(filename: str) -> str | None:
    suffix = PurePath(filename or "").suffix.lower()
    return next((kind for kind, suffixes in SUPPORTED.items() if suffix in suffixes), None)


def detect_content_type(filename: str, declared: str | None) -> str:
    """The canonical content type of an upload, from its declared type and its extension.

    Both must agree, except that a generic declared type (octet-stream, none) defers to the
    extension and `text/plain` is accepted for Markdown files (many clients send it).
    """
    by_extension = _extension_type(filename)
    mime = (declared or "").split(";", 1)[0].strip().lower()
    mime = _ALIASES.get(mime, mime)
    if by_extension is None:
        raise IngestionError(
            f"“{filename or 'This file'}” is not a supported kind of file. "
            f"Upload {SUPPORTED_DESCRIPTION}."
        )
    if mime in _GENERIC or mime == by_extension:
        return by_extension
    if mime == TEXT and by_extension == MARKDOWN:
        return MARKDOWN
    if mime in SUPPORTED:
        raise IngestionError(
            f"“{filename}” is named like {by_extension} but was sent as {mime}. "
            "Check the file and upload it again."
        )
    raise IngestionError(
        f"“{filename}” was sent as {mime}, which is not supported. Upload {SUPPORTED_DESCRIPTION}."
    )


# --------------------------------------------------------------------------- extraction


def _decode(data: bytes, filename: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    if b"\x00" in data[:8192]:
        raise IngestionError(
            f"“{filename}” does not look like a text file (it contains binary data)."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Legacy Windows text; undecodable bytes become U+FFFD rather than failing.
        return data.decode("cp1252", errors="replace")


class _HTMLText(HTMLParser):
    """Visible text of an HTML page: scripts, styles and other non-content elements are
    dropped, block elements become paragraphs, headings become Markdown headings (so the
    chunker keeps them with their text)."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe"})
    BLOCK = frozenset(
        {
            "p", "div", "section", "article", "main", "header", "footer", "aside", "nav",
            "ul", "ol", "li", "table", "tr", "blockquote", "pre", "br", "hr", "dl", "dt",
            "dd", "figure", "figcaption", "form", "fieldset", "address", "details", "summary",
        }
    )  # fmt: skip
    HEADINGS = {f"h{n}": n for n in range(1, 7)}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.title: list[str] = []
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.HEADINGS:
            self.parts.append("\n\n" + "#" * self.HEADINGS[tag] + " ")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag in self.BLOCK:
            self.parts.append("\n\n" if tag not in ("br", "tr") else "\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "hr") and not self.skipping:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.HEADINGS or tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        if not self.skipping:
            self.parts.append(data)

    def text(self) -> str:
        raw = "".join(self.parts)
        lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in raw.split("\n")]
        body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        # A heading marker with nothing after it (an empty <h2>) is not a heading.
        body = re.sub(r"(?m)^#{1,6}\s*$", "", body)
        if not body:
            return " ".join("".join(self.title).split())
        return body


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.text()


def pdf_to_text(data: bytes, filename: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PyPdfError

    unreadable = (
        f"“{filename}” could not be read as a PDF: it may be damaged or not a PDF at all. "
        "Open it and save or export it as PDF again, or upload it as text."
    )
    if b"%PDF-" not in data[:1024]:
        raise IngestionError(unreadable)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = bool(reader.decrypt(""))
            except (FileNotDecryptedError, NotImplementedError, PyPdfError):
                opened = False
            if not opened:
                raise IngestionError(
                    f"“{filename}” is password-protected. Remove the password "
                    "(save an unprotected copy) and upload it again."
                )
        pages = []
        for page in reader.pages:
            pages.append(page.extract_text() or "")
    except IngestionError:
        raise
    except FileNotDecryptedError:
        raise IngestionError(
            f"“{filename}” is password-protected. Remove the password and upload it again."
        ) from None
    except Exception as exc:  # pypdf raises many kinds of errors on damaged files
        logger.info("unreadable PDF %s: %r", filename, exc)
        raise IngestionError(unreadable) from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not re.search(r"\w", text):
        raise IngestionError(
            f"“{filename}” has no text that can be read: it may be scanned pages (images). "
            "Upload a PDF with selectable text, or the document as text."
        )
    return text


def extract_text(data: bytes, content_type: str, filename: str = "") -> str:
    """The document's text. Raises IngestionError for an unsupported type, an unreadable
    file or one without any text."""
    name = filename or "This document"
    if content_type == PDF:
        text = pdf_to_text(data, name)
    elif content_type == HTML:
        text = html_to_text(_decode(data, name))
    elif content_type in (TEXT, MARKDOWN):
        text = _decode(data, name)
    else:
        raise IngestionError(
            f"{content_type or 'This kind of file'} is not supported. "
            f"Upload {SUPPORTED_DESCRIPTION}."
        )
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    # PostgreSQL text is UTF-8: lone surrogates (from odd PDFs) become "?".
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    if not re.search(r"\w", text):
        raise IngestionError(f"“{name}” has no text to learn from: it is empty.")
    return text


# --------------------------------------------------------------------------- chunking

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")


def _is_heading(block: str) -> bool:
    lines = block.split("\n")
    if len(lines) == 1 and _HEADING.match(lines[0]):
        return True
    # Setext heading: "Title\n=====" (a one-line title underlined).
    return len(lines) == 2 and bool(_SETEXT.match(lines[1])) and bool(lines[0].strip())


def _level(heading: str) -> int:
    line = heading.split("\n", 1)[0].lstrip()
    if line.startswith("#"):
        return len(line) - len(line.lstrip("#"))
    underline = heading.split("\n")[-1].strip()
    return 1 if underline.startswith("=") else 2


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, paragraphs) in order; a heading and its subheadings are one heading."""
    blocks: list[str] = []
    for raw in re.split(r"\n\s*\n", text):
        block = "\n".join(line.rstrip() for line in raw.strip("\n").split("\n")).strip()
        if not block:
            continue
        if _is_heading(block):
            blocks.append(block)
            continue
        # Markdown headings need no blank line around them ("# Title\ntext"): each
        # heading line is a block of its own.
        lines: list[str] = []
        for line in block.split("\n"):
            if _HEADING.match(line):
                if lines:
                    blocks.append("\n".join(lines))
                    lines = []
                blocks.append(line.strip())
            else:
                lines.append(line)
        if lines:
            blocks.append("\n".join(lines))
    sections: list[tuple[str, list[str]]] = []
    heading = ""
    body: list[str] = []
    for block in blocks:
        if _is_heading(block):
            if body:
                sections.append((heading, body))
                heading, body = "", []
            # A subheading stays under its parent; a heading at the same or a higher level
            # replaces the previous one, whose section was empty.
            if heading and _level(block) > _level(heading.rsplit("\n", 1)[-1]):
                heading = f"{heading}\n{block}"
            else:
                heading = block
        else:
            body.append(block)
    if body or heading:
        sections.append((heading, body))
    return sections


def _split_long(text: str, limit: int) -> list[str]:
    """Sentences of `text` (a long sentence cut at words, a long word at characters),
    each of at most `limit` characters."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        if not sentence:
            continue
        if len(sentence) <= limit:
            pieces.append(sentence)
            continue
        current = ""
        for word in sentence.split():
            while len(word) > limit:
                if current:
                    pieces.append(current)
                    current = ""
                pieces.append(word[:limit])
                word = word[limit:]
            if current and len(current) + 1 + len(word) > limit:
                pieces.append(current)
                current = word
            else:
                current = f"{current} {word}" if current else word
        if current:
            pieces.append(current)
    return pieces


def _tail(text: str, overlap: int) -> str:
    """The last ~`overlap` characters of `text`, starting at a word boundary."""
    if overlap <= 0 or len(text) <= overlap:
        return text if overlap > 0 else ""
    tail = text[-overlap:]
    space = tail.find(" ")
    if 0 <= space < len(tail) - 1:
        tail = tail[space + 1 :]
    return tail.strip()


def chunk_text(text: str, *, size: int = CHUNK_SIZE, overlap: int = CHUNK_OVERLAP) -> list[str]:
    """Cut `text` into passages of about `size` characters.

    Paragraph-aware: paragraphs are packed whole while they fit; a longer one is split at
    sentences (then words). A heading always starts the passage that holds its first
    text, and a section split over several passages repeats its heading at the top of
    each. Consecutive passages of one section overlap by about `overlap` characters (the
    end of the previous one, cut at a word). No passage is empty or without a word.
    """
    if overlap >= size:
        raise ValueError("overlap must be smaller than size")
    chunks: list[str] = []
    for heading, paragraphs in _sections(text):
        heading = heading[: size // 4].strip()
        prefix = f"{heading}\n\n" if heading else ""
        budget = max(size - len(prefix) - overlap - 2, size // 2)
        # (text, separator before it): sentences of one paragraph are joined by a space,
        # paragraphs by a blank line.
        pieces: list[tuple[str, str]] = []
        for paragraph in paragraphs:
            for index, piece in enumerate(_split_long(paragraph, budget)):
                pieces.append((piece, " " if index else "\n\n"))
        if not pieces:
            if heading:
                chunks.append(heading)
            continue
        body = ""
        for piece, separator in pieces:
            if body and len(prefix) + len(body) + len(separator) + len(piece) > size:
                chunks.append(prefix + body)
                body = _tail(body, overlap)
            body = f"{body}{separator}{piece}" if body else piece
        if body:
            chunks.append(prefix + body)
    return [chunk.strip() for chunk in chunks if re.search(r"\w", chunk)]

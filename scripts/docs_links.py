"""Checks a Markdown file's relative links, as mkdocs --strict checks the pages'.

    python scripts/docs_links.py README.md site

Every link that is not a URL must name a file or folder of the checkout; a link to
a page of docs/ with an #anchor must name an id of that page as mkdocs built it
into SITE (docs/X.md -> SITE/X/index.html).  Exits 1, naming each bad link.
"""

import html.parser
import os
import re
import sys

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


class Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(value for name, value in attrs if name == "id" and value)


def page_ids(site, page):
    """The ids of docs/`page` (relative to docs/) as built into `site`."""
    stem = page[:-len(".md")]
    if stem == "index" or stem.endswith("/index"):
        built = os.path.join(site, stem[:-len("index")], "index.html")
    else:
        built = os.path.join(site, stem, "index.html")
    parser = Ids()
    with open(built, encoding="utf-8") as f:
        parser.feed(f.read())
    return parser.ids


def outside_code(text):
    """`text` without its fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def bad_links(markdown, site):
    base = os.path.dirname(os.path.abspath(markdown))
    with open(markdown, encoding="utf-8") as f:
        text = outside_code(f.read())
    bad = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor of this file (GitHub's, not checked here)
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(base, path))
        if not os.path.exists(full):
            bad.append("%s: no such file or folder" % target)
            continue
        docs = os.path.join(base, "docs") + os.sep
        if anchor and full.startswith(docs) and full.endswith(".md"):
            if anchor not in page_ids(site, full[len(docs):]):
                bad.append("%s: the page has no anchor #%s" % (target, anchor))
        elif anchor:
            bad.append("%s: an anchor outside docs/ cannot be checked" % target)
    return bad


def main(argv):
    markdown, site = argv
    bad = bad_links(markdown, site)
    for line in bad:
        print("%s: bad link %s" % (markdown, line), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

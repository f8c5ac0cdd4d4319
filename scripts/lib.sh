# Sourced, not run: what the scripts share (scripts/*, benchmarks/run).  One way to find
# an interpreter, and one way to say that something is SKIPPED: loudly, never silently.

# loud MESSAGE: a notice nobody scrolls past, on stderr.
loud() { printf '\n*** tbfast: %s ***\n\n' "$*" >&2; }

# find_python VERSION: prints the newest pyenv patch release of CPython VERSION, else
# pythonVERSION on PATH (which may be a pyenv shim for a version that isn't installed,
# so run it to be sure); fails when there is none.
find_python() {
    local version=$1 python
    python=$(printf '%s\n' "$(pyenv root 2>/dev/null)/versions/$version".*/bin/python |
             grep -E "/$version\.[0-9]+/bin/python$" | sort -V | tail -n 1) ||
        python=$(command -v "python$version") || return 1
    [ "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$version" ] &&
        echo "$python"
}

# default_python: prints the interpreter of the scripts that need just one: $PYTHON,
# else CPython 3.11 as find_python finds it, else python3, saying so.
default_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif ! find_python 3.11; then
        loud "CPython 3.11 not found (pyenv or PATH): using $(command -v python3 || echo 'no python3 either')"
        command -v python3
    fi
}

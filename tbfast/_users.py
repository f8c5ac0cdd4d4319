"""Who owns a file or serves a socket, as messages name them."""

import pwd


def describe_uid(uid):
    """'uid 1001 (mallory)', or 'uid 1001' for a uid no user has."""
    try:
        return "uid %d (%s)" % (uid, pwd.getpwuid(uid).pw_name)
    except KeyError:
        return "uid %d" % uid

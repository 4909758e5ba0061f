"""Which profiles ([[profiles]] settings, rendered into the hub's settings) a
user may run, for notebook servers and jobs alike."""


class ProfileError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def allowed(profiles, groups):
    groups = set(groups)
    return [p for p in profiles if groups & set(p["groups"])]


def choose(profiles, groups, name):
    """The profile `name` (None: the first allowed) if `groups` may use it,
    else ProfileError with the HTTP status and a message that says why."""
    usable = {p["name"]: p for p in allowed(profiles, groups)}
    if not usable:
        raise ProfileError(403, "None of your groups may start a notebook server or job.")
    if name is None:
        name = next(iter(usable))
    if name not in usable:
        why = "is not a profile of this lab" if name not in {p["name"] for p in profiles} else "is not allowed for your groups"
        raise ProfileError(400, f"Profile '{name}' {why}. You may use: {', '.join(usable)}.")
    return usable[name]


def require_built(profile):
    if not profile.get("image"):
        raise ProfileError(400, f"Profile '{profile['name']}' is not built on this lab yet "
                                f"(an admin runs: datalab images build {profile['image_name']}).")
    return profile

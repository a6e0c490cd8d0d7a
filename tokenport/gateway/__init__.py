"""The request lifecycle: authenticate → resolve zone → admit → route → stream → settle."""

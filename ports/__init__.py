"""The HTTP edge: the app factory, authentication, and one router per port."""

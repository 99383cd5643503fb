from . import audit, chase, erasure, imports, internal, members, reveal

routers = [members.router, imports.router, reveal.router, audit.router, erasure.router,
           chase.router, internal.router]

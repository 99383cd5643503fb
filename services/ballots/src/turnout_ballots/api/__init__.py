from . import ballots, imports, replacements, votes

routers = [ballots.router, votes.router, imports.router, replacements.router]

"""Who may go where: authentication, destination rules, the SSRF guard, and decisions."""

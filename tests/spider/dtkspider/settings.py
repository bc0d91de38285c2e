"""Settings of the test spider project: no network, no telnet console, quiet logs."""

BOT_NAME = "dtkspider"
SPIDER_MODULES = ["dtkspider.spiders"]
TELNETCONSOLE_ENABLED = False
LOG_LEVEL = "INFO"

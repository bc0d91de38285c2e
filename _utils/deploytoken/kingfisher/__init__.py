"""Is the Kingfisher server busy? One module per source (``scrapyd``, ``tmux``, ``postgres``), the registry
(``sources``), the verdict (``busy``) and the guards' decision (``guard``)."""

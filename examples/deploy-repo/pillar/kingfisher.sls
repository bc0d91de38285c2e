# What the busy check (kingfisher.busy, deploytoken.setup, deploytoken.doctor) reads on kingfisher-main.
# A source the server does not have is turned off: scrapyd: false.
kingfisher:
  scrapyd:
    url: http://localhost:6800
    username: kingfisher
    password: change-me      # keep the real one in the team's private pillar
  postgres:
    socket_dir: /var/run/postgresql
    port: 5432
    threshold: 3600          # seconds
  tmux:
    users: auto

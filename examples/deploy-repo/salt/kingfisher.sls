# Stands for the team's own states of the Kingfisher server; they run only after the guard passed.
kingfisher deployed:
  file.managed:
    - name: /var/lib/kingfisher-deploy/deployed
    - makedirs: True
    - contents: deployed

# The Kingfisher guards, next to what they protect: each one runs only when the state it names would
# change (prereq), and then stops it while that would interrupt a crawl, a tmux session's work or a long
# query, unless the setup recorded the data support manager's consent. In the team's own states they name
# what a deployment restarts (service: scrapyd, service: postgresql); here, the stand-in above.
no crawls interrupted:
  kingfisher.no_running_jobs:
    - prereq:
      - file: kingfisher deployed
no tmux work interrupted:
  kingfisher.no_active_sessions:
    - prereq:
      - file: kingfisher deployed
no long queries interrupted:
  kingfisher.no_long_queries:
    - prereq:
      - file: kingfisher deployed

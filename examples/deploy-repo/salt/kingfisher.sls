# Stands for the team's own states of the Kingfisher server; they run only after the guard passed.
kingfisher deployed:
  file.managed:
    - name: /var/lib/kingfisher-deploy/deployed
    - makedirs: True
    - contents: deployed

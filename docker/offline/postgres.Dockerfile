# PostgreSQL for docker/compose.yaml on machines that reach no image registry: built from a
# local Debian base (see docker/README.md, "Offline"), with the environment interface of the
# official postgres image that compose.yaml uses (POSTGRES_USER / _PASSWORD / _DB, data in
# /var/lib/postgresql/data, pg_isready).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL snn-study.image=postgres
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data
COPY docker/offline/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
CMD ["sh", "/usr/local/bin/postgres-entrypoint.sh"]

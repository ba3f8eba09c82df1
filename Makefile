# write_scaling: PGXS build, and the make demo / make test / make bench entry points.

EXTENSION = write_scaling
MODULE_big = write_scaling
OBJS = \
	src/write_scaling.o \
	src/guc.o \
	src/shmem.o \
	src/frontier.o \
	src/store_catalog.o \
	src/event_input.o \
	src/event_store.o \
	src/event_writer.o \
	src/snapshot.o \
	src/worker.o \
	src/queue.o \
	src/queue_worker.o \
	src/shard_hash.o \
	src/shard_map.o \
	src/shard_conn.o \
	src/shard_defer.o \
	src/shard_guard.o \
	src/shard_utility.o \
	src/shard_stream.o \
	src/shard_send.o \
	src/shard_upsert.o \
	src/shard_modify.o \
	src/shard_route.o \
	src/bulk.o \
	src/bulk_direct.o \
	src/copy_binary.o \
	src/wal_advice.o \
	src/stats.o
DATA = write_scaling--0.1.0.sql
PGFILEDESC = "write_scaling - write scaling patterns inside PostgreSQL"

# libpq: rows for shards travel on postgres_fdw's connections (shard_route.c).
PG_CPPFLAGS = -I$(srcdir)/src -I$(shell $(PG_CONFIG) --includedir)
SHLIB_LINK = -lpq
PG_CFLAGS = -Werror

# pg_regress runs on a temporary instance with the library preloaded.
REGRESS = event_store snapshot bulk queue shard
REGRESS_OPTS = --temp-instance=tmp_check_regress --temp-config=$(srcdir)/test/regress.conf --encoding=UTF8

# Perl TAP tests on PostgreSQL::Test::Cluster.
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: rebuild everything when a header changes.
$(OBJS): $(wildcard $(srcdir)/src/*.h)

.PHONY: deps demo test bench

deps:
	bash scripts/install-deps

demo: deps
	bash scripts/demo

test: deps
	bash test/run

bench: deps
	bash bench/run

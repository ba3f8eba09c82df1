/*
 * spread_inserts.c
 *	  A baseline of the sharding benchmark: one client that routes its rows
 *	  itself, as an application sharded by hand does.  It holds a
 *	  connection to every shard and writes each row straight into its
 *	  key's slot table on its key's shard, one row per statement and
 *	  transaction, as prepared statements, one after the other.
 *
 * spread_inserts SECONDS ROWS CONNINFO...
 *	  ROWS is a file of "shard<TAB>table<TAB>id" lines (shard: 1 for the
 *	  first CONNINFO), written in order; running out of them before
 *	  SECONDS have passed is an error.  Prints the rows written per second.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "libpq-fe.h"

#define MAX_SHARDS 16
#define MAX_TABLES 1024

typedef struct Row
{
	int			shard;			/* 0-based */
	int			table;			/* index into tables */
	char		id[24];
} Row;

static char *tables[MAX_TABLES];
static int	ntables = 0;

static void
die(const char *what, PGconn *conn)
{
	fprintf(stderr, "spread_inserts: %s%s%s\n", what, conn ? ": " : "",
			conn ? PQerrorMessage(conn) : "");
	exit(1);
}

static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
table_index(const char *name)
{
	for (int i = 0; i < ntables; i++)
		if (strcmp(tables[i], name) == 0)
			return i;
	if (ntables == MAX_TABLES)
		die("too many tables", NULL);
	tables[ntables] = strdup(name);
	return ntables++;
}

static Row *
read_rows(const char *path, int nshards, long *nrows)
{
	FILE	   *file = fopen(path, "r");
	long		allocated = 65536;
	Row		   *rows = malloc(sizeof(Row) * allocated);
	char		table[128];
	int			shard;
	char		id[24];

	if (file == NULL)
		die("cannot open the rows file", NULL);
	*nrows = 0;
	while (fscanf(file, "%d\t%127s\t%23s", &shard, table, id) == 3)
	{
		if (shard < 1 || shard > nshards)
			die("a row names a shard without a connection", NULL);
		if (*nrows == allocated)
			rows = realloc(rows, sizeof(Row) * (allocated *= 2));
		rows[*nrows].shard = shard - 1;
		rows[*nrows].table = table_index(table);
		strcpy(rows[*nrows].id, id);
		(*nrows)++;
	}
	fclose(file);
	return rows;
}

int
main(int argc, char **argv)
{
	PGconn	   *conns[MAX_SHARDS];
	char		prepared[MAX_SHARDS][MAX_TABLES];	/* statement made yet? */
	int			nshards = argc - 3;
	double		seconds;
	double		start;
	long		nrows;
	long		done = 0;
	Row		   *rows;

	if (argc < 4 || nshards > MAX_SHARDS)
		die("usage: spread_inserts SECONDS ROWS CONNINFO...", NULL);
	seconds = atof(argv[1]);
	rows = read_rows(argv[2], nshards, &nrows);
	memset(prepared, 0, sizeof(prepared));
	for (int i = 0; i < nshards; i++)
	{
		conns[i] = PQconnectdb(argv[i + 3]);
		if (PQstatus(conns[i]) != CONNECTION_OK)
			die("cannot connect", conns[i]);
	}
	srandom(getpid());

	start = now_seconds();
	while (now_seconds() - start < seconds)
	{
		Row		   *row;
		PGconn	   *conn;
		char		name[16];
		char		customer[16];
		char		amount[24];
		const char *values[3];
		PGresult   *res;

		if (done == nrows)
			die("the rows file ran out before the time did", NULL);
		row = &rows[done];
		conn = conns[row->shard];
		snprintf(name, sizeof(name), "ins%d", row->table);
		if (!prepared[row->shard][row->table])
		{
			char		sql[256];

			snprintf(sql, sizeof(sql),
					 "INSERT INTO %s (id, customer, amount, created_at) VALUES ($1, $2, $3, now())",
					 tables[row->table]);
			res = PQprepare(conn, name, sql, 3, NULL);
			if (PQresultStatus(res) != PGRES_COMMAND_OK)
				die("cannot prepare", conn);
			PQclear(res);
			prepared[row->shard][row->table] = 1;
		}
		/* Values like pgbench's script's: a short customer, random cents. */
		snprintf(customer, sizeof(customer), "c0");
		snprintf(amount, sizeof(amount), "%.2f", (random() % 10000000 + 1) / 100.0);
		values[0] = row->id;
		values[1] = customer;
		values[2] = amount;
		res = PQexecPrepared(conn, name, 3, values, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			die("cannot insert", conn);
		PQclear(res);
		done++;
	}
	printf("%.1f\n", done / (now_seconds() - start));
	for (int i = 0; i < nshards; i++)
		PQfinish(conns[i]);
	return 0;
}

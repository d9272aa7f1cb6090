/*
 * A small HTTP(S) server on loopback that answers as the Kubernetes API
 * server does for pods: a PodList for LIST requests and watch streams
 * (chunked, one watch event per line) for WATCH requests. Shared by the
 * pkg/k8s tests and the agent's end-to-end Kubernetes test.
 *
 * Either the test answers each request itself (a kas_handler), or the
 * built-in kas_serve_pods handler serves a PodList set with kas_set_list()
 * and watch events added with kas_push(), the way the API server does:
 * each watch gets the events newer than its resourceVersion, then the ones
 * pushed while it is open. Other objects (Jobs) are served by path from
 * kas_add_object(); anything else is a 404 Status.
 */
#ifndef EBPF_MONITOR_K8S_API_SERVER_H
#define EBPF_MONITOR_K8S_API_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

enum kas_req_kind { KAS_LIST, KAS_WATCH, KAS_OTHER };

struct kas;
struct kas_conn;

/* Answers the n-th (from 1) request of its kind; the server closes the connection after. */
typedef void (*kas_handler)(struct kas *s, struct kas_conn *c, enum kas_req_kind kind, int n);

#define KAS_MAX_CONNS   64
#define KAS_MAX_EVENTS  64
#define KAS_MAX_OBJECTS 16

struct kas_event {
    unsigned long rv; /* the object's resourceVersion, for resuming watches */
    char *line;       /* {"type":...,"object":...} */
    char *path;       /* kas_push_to's collection; NULL: every watch */
};

#define KAS_MAX_COLLECTIONS 4

struct kas {
    int lfd, port;
    SSL_CTX *tls; /* NULL: plain HTTP */
    pthread_t accept_thr;
    /* Guards everything below; waits on cond see every request arrive. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stopping;
    int lists, watches, tls_failures;
    char list_paths[8][1024], watch_paths[8][1024];
    char auth[512]; /* the last Authorization header's value */
    kas_handler handler;
    pthread_t conns[KAS_MAX_CONNS];
    int nconns;
    /* kas_serve_pods state */
    char *list_body;
    struct kas_event events[KAS_MAX_EVENTS];
    int nevents;
    int open_watches; /* watch streams being served now */
    /* objects served by path (GET), and how many GETs of other paths came */
    char *object_paths[KAS_MAX_OBJECTS], *objects[KAS_MAX_OBJECTS];
    int nobjects, gets;
    /* lists by collection path (kas_set_list_for), for LISTs of those paths */
    char *coll_paths[KAS_MAX_COLLECTIONS], *coll_lists[KAS_MAX_COLLECTIONS];
    int ncoll;
};

/* Starts on a free 127.0.0.1 port (s->port); tls NULL for plain HTTP (taken over). 0 or -errno. */
int kas_start(struct kas *s, kas_handler h, SSL_CTX *tls);
/* Closes the listener and every connection (open watches end) and waits for the threads. */
void kas_stop(struct kas *s);
/* Waits until the server has seen at least lists LISTs and watches WATCHes. */
bool kas_wait(struct kas *s, int lists, int watches, int timeout_ms);

/* ---- answering a request ---- */

void kas_respond(struct kas_conn *c, int status, const char *reason, const char *body);
/* A 200 chunked response, then one chunk per watch event, then the last chunk. */
void kas_stream_begin(struct kas_conn *c);
void kas_stream_event(struct kas_conn *c, const char *type, const char *object);
void kas_stream_end(struct kas_conn *c);
/* Keeps a watch open until the server stops or the client hangs up. */
void kas_hold(struct kas *s, struct kas_conn *c);

/* ---- the built-in pod server ---- */

/*
 * LIST: the body set by kas_set_list (only the items on the node a
 * fieldSelector=spec.nodeName=<node> asks for, as the API server answers);
 * WATCH: events newer than its resourceVersion, then live (not filtered).
 */
void kas_serve_pods(struct kas *s, struct kas_conn *c, enum kas_req_kind kind, int n);
/* Replaces the PodList body (copied). */
void kas_set_list(struct kas *s, const char *body);
/*
 * Appends a watch event (object's resourceVersion rv) and sends it to open
 * watches. rv 0 (an ERROR event's Status has none) goes only to the watches
 * open now, never to later ones. 0 or -errno.
 */
int kas_push(struct kas *s, const char *type, unsigned long rv, const char *object);

/*
 * Other collections than pods (Services, EndpointSlices): once set, a GET of
 * path?query (e.g. /api/v1/services?limit=500) is a LIST (or with watch=1 a
 * WATCH) served by the handler as pods are: kas_serve_pods answers LISTs with
 * body (copied) and sends kas_push_to() events only to watches of path.
 * 0 or -errno.
 */
int kas_set_list_for(struct kas *s, const char *path, const char *body);
int kas_push_to(struct kas *s, const char *path, const char *type, unsigned long rv,
                const char *object);

/* Serves body (copied) to GETs of path, e.g. /apis/batch/v1/namespaces/NS/jobs/NAME. 0 or -errno.
 */
int kas_add_object(struct kas *s, const char *path, const char *body);

/* ---- API objects (malloc'd strings, NULL on failure) ---- */

/* A Pod's fields for kas_pod_object(); NULL (0) leaves a field out. */
struct kas_pod {
    const char *uid, *name, *ns, *node, *rv, *container_id;
    const char *labels;     /* the labels object's members: "\"app\":\"web\"" */
    const char *owner_kind; /* the controller owner reference */
    const char *owner_name, *owner_uid;
    const char *ips[2]; /* status.podIPs (and podIP, the first) */
    bool host_network;
    const char *phase; /* status.phase; NULL: Running */
};

/* A Pod as the API serves it (kind/apiVersion set). */
char *kas_pod_object(const struct kas_pod *p);
/* A batch/v1 Job, owned by the CronJob cronjob (NULL: none). */
char *kas_job_json(const char *ns, const char *name, const char *uid, const char *cronjob);

/* A Pod as watch events carry it (kind/apiVersion set); container_id NULL for none. */
char *kas_pod_json(const char *uid, const char *name, const char *ns, const char *node,
                   const char *rv, const char *container_id);
/* A PodList of the given pods. */
char *kas_pod_list(const char *rv, const char *const *items, int n);
/* The Status of an expired resourceVersion (410 Gone). */
char *kas_status_410(void);
/* tests/fixtures/k8s/<name>, read whole. */
char *kas_read_fixture(const char *name);

/*
 * A TLS server context for 127.0.0.1 with a fresh self-signed certificate,
 * written to ca_file as the CA a client must trust (as the service account's
 * ca.crt is for the real API server). NULL on failure.
 */
SSL_CTX *kas_tls_context(const char *ca_file);

/* ---- Services and EndpointSlices (malloc'd strings, NULL on failure) ---- */

/* A ClusterIP Service ns/name on ip:port (targetPort 8080, selector app=name). */
char *kas_service_json(const char *ns, const char *name, const char *rv, const char *ip, int port);
/* The EndpointSlice of Service ns/service: one ready endpoint, ip:8080, the pod (node, ns, name,
 * uid). */
char *kas_slice_json(const char *ns, const char *service, const char *rv, const char *ip,
                     const struct kas_pod *pod);
/* A list (ServiceList, EndpointSliceList, ...) of items, a comma-separated run of objects. */
char *kas_list_json(const char *kind, const char *api_version, const char *rv, const char *items);

#endif

/*
 * Cgroup paths as the kernel reports them (a process can name its own
 * cgroups): the parser must only ever return a pod UID and a container id
 * of the documented shapes.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cgroup.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *path = malloc(size + 1);
    if (!path)
        return 0;
    memcpy(path, data, size);
    path[size] = '\0';
    struct cgroup_pod pod;
    int rc = cgroup_parse_path(path, &pod);
    if (rc == 1) {
        if (!pod.pod_uid || strlen(pod.pod_uid) > 64)
            abort();
        for (const char *c = pod.pod_uid; *c; c++)
            if (!isxdigit((unsigned char)*c) && *c != '-')
                abort();
        if (pod.container_id && strlen(pod.container_id) != CGROUP_CONTAINER_ID_LEN)
            abort();
    } else if (rc == 0 && (pod.pod_uid || pod.container_id)) {
        abort();
    }
    free(path);
    return 0;
}

#!/usr/bin/env bash
# How the logs here were written: real `nvidia-smi --format=csv -l 1` on an NVIDIA H200,
# its wall clock shifted (an LD_PRELOAD shim adding SHIFT seconds to CLOCK_REALTIME,
# gettimeofday and time) to 20 s before each daylight-saving change, in a POSIX TZ rule
# (no tzdata needed). Each ran 42 s. Run on a host with a GPU: OUT=dir bash capture.sh
set -eu
cat > /tmp/shift.c <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <time.h>
#include <sys/time.h>
#include <stdlib.h>
static long off(void){char*s=getenv("SHIFT");return s?atol(s):0;}
int clock_gettime(clockid_t c,struct timespec*t){static int(*f)(clockid_t,struct timespec*);if(!f)f=dlsym(RTLD_NEXT,"clock_gettime");int r=f(c,t);if(!r&&(c==CLOCK_REALTIME||c==CLOCK_REALTIME_COARSE))t->tv_sec+=off();return r;}
int gettimeofday(struct timeval*t,void*z){static int(*f)(struct timeval*,void*);if(!f)f=dlsym(RTLD_NEXT,"gettimeofday");int r=f(t,z);if(!r&&t)t->tv_sec+=off();return r;}
time_t time(time_t*p){struct timespec t;clock_gettime(CLOCK_REALTIME,&t);if(p)*p=t.tv_sec;return t.tv_sec;}
C
gcc -shared -fPIC -O2 -o /tmp/shift.so /tmp/shift.c -ldl
q=timestamp,index,uuid,name,temperature.gpu,temperature.memory,memory.used,memory.total,\
utilization.gpu,power.draw,power.limit,clocks.sm,clocks.mem,clocks_event_reasons.active,pstate,\
fan.speed
berlin="CET-1CEST,M3.5.0,M10.5.0/3"
new_york="EST5EDT,M3.2.0,M11.1.0"
log() {  # name, TZ rule, UTC epoch seconds to start at
  TZ="$2" SHIFT=$(( $3 - $(date +%s) )) LD_PRELOAD=/tmp/shift.so \
    timeout -s INT 42 nvidia-smi --query-gpu="$q" --format=csv -l 1 > "$OUT/$1.csv" &
}
log berlin_autumn "$berlin" 1792889980    # 2026-10-25T00:59:40Z, 02:59:40 CEST
log new_york_autumn "$new_york" 1793512780  # 2026-11-01T05:59:40Z, 01:59:40 EDT
log berlin_spring "$berlin" 1774745980    # 2026-03-29T00:59:40Z, 01:59:40 CET
log new_york_spring "$new_york" 1772953180  # 2026-03-08T06:59:40Z, 01:59:40 EST
wait

export GOOD=1
if then fi ((
export NEVER=1
